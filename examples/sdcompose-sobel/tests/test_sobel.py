"""The plugin's own tests: its map on a drawn square, and its declarations as sdcompose checks them."""
import numpy as np
import pytest
from PIL import Image

from sdcompose.plugins.api import ControlSource, PluginContext, PluginError, check_params
from sdcompose.plugins.registry import validate_plugin_class
from sdcompose_sobel import SobelEdges


def run(image, **params):
    plugin = SobelEdges()
    return np.asarray(plugin.preprocess(ControlSource(image=image), PluginContext(),
                                        check_params(plugin.params, params, "sobel")))


def test_declarations_pass_sdcompose_checks():
    validate_plugin_class(SobelEdges, "sobel")


def test_edges_follow_a_drawn_square():
    array = np.zeros((64, 64, 3), np.uint8)
    array[16:48, 16:48] = 255
    edges = run(Image.fromarray(array), blur=0)[..., 0]
    assert edges[32, 15:17].max() > 100 and edges[32, 32] == 0 and edges[2, 2] == 0


def test_even_kernel_is_refused():
    with pytest.raises(PluginError, match="ksize must be odd"):
        run(Image.new("RGB", (8, 8)), ksize=4)
