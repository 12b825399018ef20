"""Entry point for `accelerate launch tests/aligner_entry.py train ...` in the multi-process test.

Registers the test rewards (the launched processes do not run the test module), and with
ALIGNKIT_TEST_DUMP=DIR writes each rank's LoRA weights to DIR/rank<i>.safetensors at the end
of training, so the test can check that every process ends with the same adapter.
"""

import os
from pathlib import Path

from alignkit.testing import register_test_rewards

register_test_rewards()

dump = os.environ.get("ALIGNKIT_TEST_DUMP")
if dump:
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from alignkit.aligner.lora import lora_state_dict

    end_training = Accelerator.end_training

    def end_and_dump(self):
        unet = self.unwrap_model(self._models[0])
        state = {k: v.detach().contiguous() for k, v in lora_state_dict(unet).items()}
        save_file(state, str(Path(dump) / f"rank{self.process_index}.safetensors"))
        end_training(self)

    Accelerator.end_training = end_and_dump

from alignkit.cli import main  # noqa: E402

main()
