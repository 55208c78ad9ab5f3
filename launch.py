"""cruijff: fine-tune with torchtune, evaluate with inspect-ai, from composed Hydra configs.

    python launch.py                 # the demo (tiny model, this machine)
    python launch.py -m              # the experiment's sweep
    python launch.py --help          # groups and keys
"""

import sys

import hydra
from omegaconf import DictConfig

from cruijff.app import run_app
from cruijff.config import register_resolvers
from cruijff.job import main

register_resolvers()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def app(cfg: DictConfig) -> int:
    return main(cfg)


if __name__ == "__main__":
    run_app(app, sys.argv[1:])
