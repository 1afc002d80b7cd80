"""Files shipped inside the package."""
from pathlib import Path

#: the small real cache shipped with the package (2,048 CIFAKE rows, CLIP ViT-B/16 image
#: embeddings): the demo's embedded default and the README examples' data
SAMPLE_CACHE = Path(__file__).resolve().parent.parent / "sample_data" / "cifake-b16-sample"
