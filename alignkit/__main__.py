"""`python -m alignkit` and `accelerate launch -m alignkit` enter here."""

from alignkit.cli import main

if __name__ == "__main__":
    main()
