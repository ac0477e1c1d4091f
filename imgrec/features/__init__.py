"""The classic recognition before CNNs: measure hand-made features of each image,
then learn a linear decision boundary between the classes.

The course's example tells cats from dogs by how bright the picture is and how
tall the animal stands. That works when the classes really differ in such
measurable ways, and fails when they do not; this module makes both visible::

    from imgrec import features

    result = features.train_baseline("s3://bucket/animals", out="s3://bucket/baseline")
    print(result.summary())        # test accuracy, per class, and an honest verdict

Smaller pieces, for a closer look::

    features.extract_features(image)               # one uint8 HxWx3 image -> (F,) vector
    features.object_box(image)                     # where the main object is
    table = features.extract_tree_features(uri)    # every image of a tree, with Ray Data
    features.train_baseline(table, features=["brightness", "extent"])   # no re-decoding

Every feature is a number with a meaning (``FEATURE_NAMES``); sizes are
fractions of the image, so they do not depend on the decode size.

The modules, leaf first: ``measure`` (the features of an image), ``table`` (a
whole tree with Ray Data), ``classifier`` (the boundary and the verdict),
``result``, ``plots`` (picture and report), ``baseline`` (``train_baseline``).
Everything public is re-exported here.
"""

# ruff: noqa: F401
from imgrec.features.baseline import read_cnn_result, train_baseline
from imgrec.features.classifier import (
    GOOD_ACCURACY,
    MARGIN,
    P_VALUE,
    LinearClassifier,
    binomial_p_value,
    judge,
)
from imgrec.features.measure import (
    COURSE_FEATURES,
    EDGE_THRESHOLD,
    FEATURE_GROUPS,
    FEATURE_HELP,
    FEATURE_NAMES,
    HIST_BINS,
    MIN_OBJECT_CONTRAST,
    ORIENTATION_BINS,
    FeatureError,
    ObjectBox,
    extract_features,
    extract_features_batch,
    object_box,
    resolve_features,
)
from imgrec.features.plots import decision_boundary_png, write_report
from imgrec.features.result import BaselineResult
from imgrec.features.table import FeatureTable, extract_tree_features
