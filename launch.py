"""cruijff: fine-tune with torchtune, evaluate with inspect-ai, from composed Hydra configs.

    python launch.py                 # the demo (tiny model, this machine)
    python launch.py -m              # the experiment's sweep
    python launch.py --help          # groups and keys

Installed, the same is the ``cruijff`` command, run from a project dir of your own.
"""

from cruijff.app import launch

if __name__ == "__main__":
    launch()
