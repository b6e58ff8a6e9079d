"""The example features every dataset builder emits (docs/DESIGN.md, "Data").

One definition keeps the builders interchangeable for the input pipeline: a dataset
omits what it lacks (MLT has no scene; Cityscapes no normals) and adds its own
metadata fields, but the shared fields always have these names, shapes and dtypes.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds


def example_features(
  height: int,
  width: int,
  class_names: Sequence[str],
  *,
  scene_names: Sequence[str] | None = None,
  normals: bool = True,
  extra: Mapping[str, Any] | None = None,
) -> tfds.features.FeaturesDict:
  """The features of one example.

  Args:
    height: image height in pixels.
    width: image width in pixels.
    class_names: detection classes, in label order.
    scene_names: scene classes, or None for a dataset without scene labels.
    normals: whether the dataset has surface normals (and their valid mask).
    extra: dataset-specific metadata features (ids, sequence names, ...).

  Returns:
    `image` (uint8 RGB), `depth` (float32 metres, or disparity, 0 = invalid),
    optionally `normals` (float32 unit vectors) and `normals_mask` (bool), optionally
    `scene`, `objects` (`bbox` normalised yxyx, `label`), `image_id` and `extra`.
  """
  dense = lambda *shape, dtype=np.float32: tfds.features.Tensor(
    shape=shape, dtype=dtype, encoding='zlib'
  )
  features = {
    'image': tfds.features.Image(shape=(height, width, 3), encoding_format='png'),
    'depth': dense(height, width),
  }
  if normals:
    features['normals'] = dense(height, width, 3)
    features['normals_mask'] = dense(height, width, dtype=np.bool_)
  if scene_names is not None:
    features['scene'] = tfds.features.ClassLabel(names=list(scene_names))
  features['objects'] = tfds.features.Sequence(
    {
      'bbox': tfds.features.BBoxFeature(),
      'label': tfds.features.ClassLabel(names=list(class_names)),
    }
  )
  features['image_id'] = np.int64
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)
