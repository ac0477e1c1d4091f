"""The ``keras.applications`` family: every backbone Keras ships, one entry each.

An entry's factory is a ``KerasApplication`` (the class name, and the submodule
holding its ``preprocess_input``); nothing here imports Keras until a network
is built. A backbone from elsewhere needs only its own ``register(ModelSpec(
kind="backbone", factory=...))``: see ``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgrec.models.registry import ModelSpec, register


@dataclass(frozen=True)
class KerasApplication:
    """``keras.applications.<constructor>(include_top=False, ...)`` as a registry factory."""

    constructor: str  # e.g. "MobileNetV2"
    module: str  # the keras.applications submodule with its preprocess_input, e.g. "mobilenet_v2"

    @property
    def label(self) -> str:
        return f"keras.applications.{self.constructor}"

    def __call__(self, input_shape: tuple[int, int, int], weights: str | None = None, **kwargs: Any):
        import keras

        return getattr(keras.applications, self.constructor)(include_top=False, weights=weights,
                                                               input_shape=input_shape, **kwargs)


def _backbone(
    name: str,
    constructor: str,
    module: str,
    size: int,
    preprocessing: str,
    table: tuple | None = None,  # (size MB, top-1 %, top-5 %, params M, depth)
    min_size: int = 32,
    **extra: Any,
) -> ModelSpec:
    size_mb, top1, top5, params_m, depth = table or (None,) * 5
    # The plain class name means the plain variant (not the minimalistic one).
    aliases = () if extra.get("kwargs") else (constructor,)
    return register(ModelSpec(
        name=name, kind="backbone", input_size=(size, size), min_size=min_size, preprocessing=preprocessing,
        factory=KerasApplication(constructor, module), blocks=_BLOCK_ENDS[module], aliases=aliases,
        size_mb=size_mb, top1=top1, top5=top5, params_m=params_m, depth=depth,
        description=extra.pop("description", f"keras.applications.{constructor}"), **extra,
    ))


# Block-end rules, matched with re.search against "ClassName:layer_name" of every
# backbone layer. A match with a (?P<block>...) group marks a block: the
# boundary falls after the LAST layer of that block (robust to unnamed
# activations inside it). A match without the group is a block end by itself.
_RESNET_BLOCKS = r":pool1_pool$|:(?P<block>conv\d_block\d+)_"
_EFFICIENTNET_BLOCKS = r":stem_activation$|:(?P<block>block\d+[a-z])_"
_VGG_BLOCKS = r":block\d_pool$"
_BLOCK_ENDS = {  # by keras.applications module
    "mobilenet": r":conv1_relu$|:conv_pw_\d+_relu$",
    "mobilenet_v2": r":Conv1_relu$|:(?P<block>block_\d+|expanded_conv)_",
    "mobilenet_v3": r":(?P<block>expanded_conv(?:_\d+)?)_",
    "resnet": _RESNET_BLOCKS,
    "resnet_v2": _RESNET_BLOCKS,
    "efficientnet": _EFFICIENTNET_BLOCKS,
    "efficientnet_v2": _EFFICIENTNET_BLOCKS,
    "densenet": r":pool1$|:pool\d_pool$|:(?P<block>conv\d_block\d+)_",
    "inception_v3": r":mixed\d+$",
    "inception_resnet_v2": r":mixed_\d[a-z]$|:block(?:35|17|8)_\d+_ac$",
    "xception": r"^Add:|:block1_conv2_act$",
    "vgg16": _VGG_BLOCKS,
    "vgg19": _VGG_BLOCKS,
    "nasnet": r":(?:normal_concat_\d+|reduction_concat_(?:reduce|stem)_\d+)$",
    "convnext": r":\w+_stem$|:\w+_downsampling_block_\d+$|:(?P<block>\w+_stage_\d+_block_\d+)_",
}

_MOBILENET_KW = dict(alpha=True, imagenet_sizes=(128, 160, 192, 224))
_MOBILENET_V2_KW = dict(alpha=True, imagenet_sizes=(96, 128, 160, 192, 224))
_EFFNET_KW = dict(imagenet_stddev_fix=True)

# table = (size MB, top-1, top-5, params M, depth)
_backbone("xception", "Xception", "xception", 299, "tf", (88, 79.0, 94.5, 22.9, 81), min_size=71)
_backbone("vgg16", "VGG16", "vgg16", 224, "caffe", (528, 71.3, 90.1, 138.4, 16))
_backbone("vgg19", "VGG19", "vgg19", 224, "caffe", (549, 71.3, 90.0, 143.7, 19))
_backbone("resnet50", "ResNet50", "resnet", 224, "caffe", (98, 74.9, 92.1, 25.6, 107))
_backbone("resnet101", "ResNet101", "resnet", 224, "caffe", (171, 76.4, 92.8, 44.7, 209))
_backbone("resnet152", "ResNet152", "resnet", 224, "caffe", (232, 76.6, 93.1, 60.4, 311))
_backbone("resnet50_v2", "ResNet50V2", "resnet_v2", 224, "tf", (98, 76.0, 93.0, 25.6, 103))
_backbone("resnet101_v2", "ResNet101V2", "resnet_v2", 224, "tf", (171, 77.2, 93.8, 44.7, 205))
_backbone("resnet152_v2", "ResNet152V2", "resnet_v2", 224, "tf", (232, 78.0, 94.2, 60.4, 307))
_backbone("inception_v3", "InceptionV3", "inception_v3", 299, "tf", (92, 77.9, 93.7, 23.9, 189), min_size=75)
_backbone(
    "inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, "tf",
    (215, 80.3, 95.3, 55.9, 449), min_size=75,
)
_backbone("mobilenet", "MobileNet", "mobilenet", 224, "tf", (16, 70.4, 89.5, 4.3, 55), **_MOBILENET_KW)
_backbone(
    "mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, "tf", (14, 71.3, 90.1, 3.5, 105),
    **_MOBILENET_V2_KW,
)
# MobileNetV3 rows: the table in keras' mobilenet_v3 docstring (top-1, params with top).
_backbone("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, "none", (None, 68.1, None, 2.9, None), alpha=True)
_backbone("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, "none", (None, 75.6, None, 5.4, None), alpha=True)
_backbone(
    "mobilenet_v3_small_minimalistic", "MobileNetV3Small", "mobilenet_v3", 224, "none",
    (None, 61.9, None, 2.0, None), alpha=True, kwargs=(("minimalistic", True),),
    description="keras.applications.MobileNetV3Small(minimalistic=True)",
)
_backbone(
    "mobilenet_v3_large_minimalistic", "MobileNetV3Large", "mobilenet_v3", 224, "none",
    (None, 72.3, None, 3.9, None), alpha=True, kwargs=(("minimalistic", True),),
    description="keras.applications.MobileNetV3Large(minimalistic=True)",
)
_backbone("densenet121", "DenseNet121", "densenet", 224, "torch", (33, 75.0, 92.3, 8.1, 242))
_backbone("densenet169", "DenseNet169", "densenet", 224, "torch", (57, 76.2, 93.2, 14.3, 338))
_backbone("densenet201", "DenseNet201", "densenet", 224, "torch", (80, 77.3, 93.6, 20.2, 402))
_backbone("nasnet_mobile", "NASNetMobile", "nasnet", 224, "tf", (23, 74.4, 91.9, 5.3, 389))
_backbone("nasnet_large", "NASNetLarge", "nasnet", 331, "tf", (343, 82.5, 96.0, 88.9, 533))
_backbone("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, "none", (29, 77.1, 93.3, 5.3, 132), **_EFFNET_KW)
_backbone("efficientnet_b1", "EfficientNetB1", "efficientnet", 240, "none", (31, 79.1, 94.4, 7.9, 186), **_EFFNET_KW)
_backbone("efficientnet_b2", "EfficientNetB2", "efficientnet", 260, "none", (36, 80.1, 94.9, 9.2, 186), **_EFFNET_KW)
_backbone("efficientnet_b3", "EfficientNetB3", "efficientnet", 300, "none", (48, 81.6, 95.7, 12.3, 210), **_EFFNET_KW)
_backbone("efficientnet_b4", "EfficientNetB4", "efficientnet", 380, "none", (75, 82.9, 96.4, 19.5, 258), **_EFFNET_KW)
_backbone("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, "none", (118, 83.6, 96.7, 30.6, 312), **_EFFNET_KW)
_backbone("efficientnet_b6", "EfficientNetB6", "efficientnet", 528, "none", (166, 84.0, 96.8, 43.3, 360), **_EFFNET_KW)
_backbone("efficientnet_b7", "EfficientNetB7", "efficientnet", 600, "none", (256, 84.3, 97.0, 66.7, 438), **_EFFNET_KW)
_backbone("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, "none", (29, 78.7, 94.3, 7.2, None))
_backbone("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240, "none", (34, 79.8, 95.0, 8.2, None))
_backbone("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260, "none", (42, 80.5, 95.1, 10.2, None))
_backbone("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300, "none", (59, 82.0, 95.8, 14.5, None))
_backbone("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, "none", (88, 83.9, 96.7, 21.6, None))
_backbone("efficientnet_v2_m", "EfficientNetV2M", "efficientnet_v2", 480, "none", (220, 85.3, 97.4, 54.4, None))
_backbone("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480, "none", (479, 85.7, 97.5, 119.0, None))
_backbone("convnext_tiny", "ConvNeXtTiny", "convnext", 224, "none", (109.42, 81.3, None, 28.6, None))
_backbone("convnext_small", "ConvNeXtSmall", "convnext", 224, "none", (192.29, 82.3, None, 50.2, None))
_backbone("convnext_base", "ConvNeXtBase", "convnext", 224, "none", (338.58, 85.3, None, 88.5, None))
_backbone("convnext_large", "ConvNeXtLarge", "convnext", 224, "none", (755.07, 86.3, None, 197.7, None))
_backbone("convnext_xlarge", "ConvNeXtXLarge", "convnext", 224, "none", (1310, 86.7, None, 350.1, None))
