"""Reading datasets: OC20's released LMDBs and ocp-graphpar's own, through one fairchem format."""

from ocp_graphpar.datasets.layouts import (
    LABELLED_LAYOUTS,
    OC20_RELEASED,
    OCP_GRAPHPAR,
    UNLABELLED,
    Layout,
    detect_layout,
)
from ocp_graphpar.datasets.lmdb_dataset import OC20LmdbDataset
from ocp_graphpar.datasets.survey import FolderSurvey, survey_folder

__all__ = [
    "LABELLED_LAYOUTS",
    "OC20_RELEASED",
    "OCP_GRAPHPAR",
    "UNLABELLED",
    "FolderSurvey",
    "Layout",
    "OC20LmdbDataset",
    "detect_layout",
    "survey_folder",
]
