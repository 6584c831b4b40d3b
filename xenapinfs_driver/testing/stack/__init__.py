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
"""Real services on loopback for the end-to-end tests and the demo.

``Stack`` runs RabbitMQ (apt ``rabbitmq-server``), glance-api 33 under
gunicorn and cinder's api, scheduler and volume services, each in
temporary directories under one work directory, without keystone. Only
the child processes import cinder or glance.
"""

from xenapinfs_driver.testing.stack.stack import Stack  # noqa: F401
