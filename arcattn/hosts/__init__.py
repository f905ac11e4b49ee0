"""Host adapters: ComfyUI, Forge (and its ldm_patched forks), diffusers."""
