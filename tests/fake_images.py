# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""cinder's fake image service, made to behave as glance's does.

Importing it imports cinder's test package, which monkey-patches eventlet:
only the "green" tests (tests/conftest.py) may use it.
"""

from cinder.tests.unit.image import fake as fake_image

CHUNK = 64 << 10


class ImageService(fake_image._FakeImageService):
    """The fake, keeping what ``update`` uploads.

    The fake drops the data of an ``update`` (an upload could not be read
    back) and has a MagicMock as ``temp_images``, where glance's service
    has None until cinder's ``TemporaryImages`` takes it: the generic
    image path then "finds" the image already downloaded at a MagicMock's
    name.
    """

    def __init__(self):
        super().__init__()
        self.temp_images = None

    def update(self, context, image_id, metadata, data=None,
               purge_props=False, store_id=None, base_image_ref=None):
        image = super().update(context, image_id, metadata, None,
                               purge_props, store_id, base_image_ref)
        if data is not None:
            self._imagedata[image_id] = data.read()
            image.update(status='active',
                         size=len(self._imagedata[image_id]))
        return image

    def download(self, context, image_id, data=None):
        """Into ``data``; or, as glance's service does without it, an
        iterator of the image's chunks (64 KiB, glanceclient's size)."""
        if data is not None:
            return super().download(context, image_id, data)
        self.show(context, image_id)
        blob = self._imagedata.get(image_id, b'')
        return (blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK))

    def data(self, image_id):
        return self._imagedata.get(image_id)
