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
"""``testing.gc_*``: the garbage collector's test-only controls.

``gc_run(sr, timeout)`` runs a pass over sr (a ref; ``''`` for every
plugged SR) now, whatever the mode, and answers ``true`` once nothing is
left to do, ``false`` on timeout (a step blocked by a busy chain keeps it
pending). ``gc_wait(timeout)``: the same without starting anything
(passes still waiting for their delay count as work). ``gc_freeze()``
returns once no step runs and none will until ``gc_unfreeze()``.
``gc_pause_at(steps)`` makes the next pass stop, holding the server
lock, at one of ``collector.STEPS``; ``gc_wait_paused(timeout)`` names
the step reached (``''`` if none), ``gc_resume()`` lets it go on.
``gc_status()``: mode, delay, frozen, paused, running, pending, passes,
steps done. Timeouts are in seconds, as strings or numbers.
"""

from __future__ import annotations

from xenapinfs_driver.testing.xapi import errors
from xenapinfs_driver.testing.xapi import wire


def _seconds(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise errors.XapiError('INVALID_VALUE', 'timeout',
                               str(value)) from None


def gc_run(call, sr: wire.String = '', timeout: wire.String = '30'):
    db = call.db
    with db.lock:
        if sr:
            db.get('SR', sr)
            srs = [sr]
        else:
            srs = sorted({db.get('PBD', p)['SR'] for p in
                          db.find('PBD', currently_attached=True)})
    ok = call.server.collector.run(srs, _seconds(timeout))
    return 'true' if ok else 'false'


def gc_wait(call, timeout: wire.String = '30'):
    ok = call.server.collector.wait_idle(_seconds(timeout))
    return 'true' if ok else 'false'


def gc_freeze(call):
    call.server.collector.freeze(True)
    return ''


def gc_unfreeze(call):
    call.server.collector.freeze(False)
    return ''


def gc_pause_at(call, steps: wire.Set(wire.String)):
    try:
        call.server.collector.pause_at(steps)
    except (TypeError, ValueError) as exc:
        raise errors.XapiError('INVALID_VALUE', 'steps', str(exc)) from None
    return ''


def gc_wait_paused(call, timeout: wire.String = '30'):
    return call.server.collector.wait_paused(_seconds(timeout)) or ''


def gc_resume(call):
    call.server.collector.resume()
    return ''


def gc_status(call):
    return call.server.collector.status()


METHODS = {'testing.%s' % f.__name__: f for f in (
    gc_run, gc_wait, gc_freeze, gc_unfreeze, gc_pause_at, gc_wait_paused,
    gc_resume, gc_status)}
