# cinder.image.glance and cinder.image.image_utils import each other, and
# only image_utils can go first: a test module of this package that starts
# with glance would fail to import when it is the first one collected.
from cinder.image import image_utils  # noqa: F401
