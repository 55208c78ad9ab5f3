"""The packages; conf/ (cruijff's config groups) ships inside the package, as cruijff/conf."""

from setuptools import find_packages, setup

# hydra_plugins is a namespace package that Hydra's plugins share: only ours is listed
setup(packages=[*find_packages(include=["cruijff", "cruijff.*"]), "hydra_plugins.cruijff_plugins", "cruijff.conf"],
      package_dir={"cruijff.conf": "conf"})
