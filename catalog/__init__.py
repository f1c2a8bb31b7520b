"""Data about what clouds sell: the accelerator taxonomy and dated price snapshots.

The data files live next to this package (`accelerators.yaml`, `snapshots/*.csv`) so they ship in
the wheel. `catalog.taxonomy` answers "which card is this provider name?" and `catalog.prices`
reads snapshot tables; neither knows any provider's API (that lives in `node_providers/`).
"""
