"""The only code that touches the outside: NVML, captured tool output, the host. Each returns our own
frozen values (gptossctl.hardware.inventory), never library types."""
