"""RunPod: the typed config and the offer source (pods are not provisioned yet)."""
