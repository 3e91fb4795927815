"""The lab's models, loadable by name wherever the lab is installed: this directory is named in the
`dbprompt.models` entry-point group (lab/pyproject.toml), so dbprompt adds its open_clip configs
`NAME.json` and weights `NAME.safetensors` to the models it knows."""

from pathlib import Path

DIR = Path(__file__).resolve().parent
