"""Spike data: the camera simulator, the SpikeCV ``.dat`` format, TFP/TFI reconstructions, Parquet spike shards,
the Ray Data / PyTorch loaders and the dataset builders (moving-digits, video-folder, dat-folder).

Submodules are imported on demand (``from spklip.data.simulate import simulate_spikes``) so that importing
``spklip.data`` never pulls in Ray, torch or PyAV.
"""
