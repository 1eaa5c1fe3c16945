"""ecg_data: ECG windows in, numpy arrays out (synthetic ECGSYN, WFDB records, compressed sensing)."""

from .cs import (
    arsnr,
    least_squares_reconstruction,
    measure,
    rsnr,
    sensing_matrix,
    support_labels,
    wavelet_basis,
    wavelet_coefficients,
)
from .dataset import build_synthetic_dataset, default_cache_dir, synthetic_dataset_path
from .records import (
    UnusableRecord,
    bandpass_filter,
    download_records,
    list_records,
    load_record_windows,
    read_record_lead,
)
from .synthetic import EcgsynModel, add_noise, synthetic_windows
from .windows import cut_windows, resample, scale_windows, split_windows

__all__: list[str] = [
    "UnusableRecord",
    # synthetic ECG
    "synthetic_windows",
    "EcgsynModel",
    "add_noise",
    "build_synthetic_dataset",
    "synthetic_dataset_path",
    "default_cache_dir",
    # real records
    "load_record_windows",
    "bandpass_filter",
    "read_record_lead",
    "list_records",
    "download_records",
    # windows
    "scale_windows",
    "cut_windows",
    "resample",
    "split_windows",
    # compressed sensing
    "sensing_matrix",
    "wavelet_basis",
    "measure",
    "wavelet_coefficients",
    "support_labels",
    "least_squares_reconstruction",
    "rsnr",
    "arsnr",
]
