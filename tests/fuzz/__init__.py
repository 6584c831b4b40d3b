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
"""Fuzzing of the VHD library's gzip, tar and VHD parsing paths.

``corpus`` builds the seed inputs in code, ``mutate`` changes them,
``harness.run_one`` runs one input and checks what every outcome must look
like, ``test_fuzz`` is the short run CI does and ``run`` the long one::

    nice .venv/bin/python -m tests.fuzz.run --inputs 100000
"""
