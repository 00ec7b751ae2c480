"""Pack a bundle on the connected side: the recipe (spec) -> the model from a directory, a Hugging Face cache
or the Hub (sources), the target's wheels and the FlashInfer kernels vLLM pins (wheels), the vocab and compile
caches (assets), profiles and unit templates (gather) -> copy and hash each byte once, write the manifest and
the SBOM (sbom), sign (pack). Fetching goes through gptossctl.adapters (hf_hub, pip, downloads).
The bundle format itself, and verifying it, are gptossctl.bundle's.
"""
