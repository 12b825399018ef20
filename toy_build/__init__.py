"""The tools that built the toy world's weights (alignkit/toy/weights/), kept out of the
installed package: a source checkout's `python -m toy_build.train PART` retrains a part.

    train, train_flow, training   the trainers (VAE, CLIP, UNet, detector, the flow toy)
    models, tokenizer             the toy models' configs and the world's CLIP tokenizer
    detector                      the toy YOLO detector's data, fit and checks (ultralytics)
    quality                       the quality figures logged beside the weights
    log                           training_log.json and its rendering, TRAINING.md

The toy's runtime (its world, counter, prompts, judge, rewards, plugin and weights) stays in
`alignkit.toy`; nothing under `alignkit/` imports this folder (tests/test_layers.py).
"""
