"""The only code that touches the outside: GPUs (nvml, amdsmi, captures of nvidia-smi/rocm-smi/amd-smi, gpus),
the host (host, proc_net), systemd (systemd), HTTP to vLLM (openai_http), the Hugging Face Hub (hf_hub), pip
and uv (pip, uv), plain downloads (downloads). Each returns our own frozen values, never library types, and
turns the outside's failures into gptossctl errors.
"""
