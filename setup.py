"""Package list for setuptools (metadata is in pyproject.toml).

The bundled checkpoints live in the top-level ``checkpoints/`` folder and are installed as the data
package ``pacegeo.checkpoints``, so that a regular (non-editable) install carries them.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pacegeo", "pacegeo.*"]) + ["pacegeo.checkpoints"],
    package_dir={"pacegeo.checkpoints": "checkpoints"},
)
