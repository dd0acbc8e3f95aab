"""napari-tskd frontend: widgets that run the tskd backend's stages from the viewer."""

__version__ = "0.1.0"
