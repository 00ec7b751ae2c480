"""Hardware: what the machine has (inventory), what a model needs (requirements), which profile fits
and why the others do not (profiles, check). Probes live behind gptossctl.adapters."""
