"""A stand-in agent for the LocalSpawner tests (bound where the real ``kernel_image`` goes)."""
