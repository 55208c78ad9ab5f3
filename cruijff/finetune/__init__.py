"""The fine-tuning stage, behind one seam: torchtune's stock LoRA recipes.

``render`` writes a run's torchtune-native ``finetune.yaml``; ``recipe`` runs the single-device
recipe in this process; ``distributed`` runs the distributed one under torchrun; ``stage`` is the
stage over one run dir (resume, run, record). Nothing outside this package imports torchtune for
training.
"""

from .recipe import TrainingDiverged
from .render import (DISTRIBUTED, RECIPE, config_text, metric_logger, model_section, parameter_counts, recipe_name, render,
                     seed_from_stock, tune_command, write_config)
from .stage import epoch_summary, finetune_run, resume_point

__all__ = ["TrainingDiverged", "DISTRIBUTED", "RECIPE", "config_text", "metric_logger", "model_section", "parameter_counts",
           "recipe_name", "render", "seed_from_stock", "tune_command", "write_config", "epoch_summary",
           "finetune_run", "resume_point"]
