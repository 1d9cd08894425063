"""fiqa entry point: python main.py [group=option ...] [key=value ...] (see README)."""

import sys

import hydra
import lightning  # noqa: F401  (imported before Hydra sets up logging: conf/hydra/default.yaml routes its logger)
from omegaconf import DictConfig

from fiqa.utils import launch, resolvers

resolvers.register()  # ${fiqa.*} in conf/hydra/launcher/slurm.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from fiqa.tasks import run

    return run(cfg)


if __name__ == "__main__":
    launch.prepare(sys.argv[1:])  # torchrun / srun ranks: one FIQA_RUN_ID, hence one run dir
    main()
