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
"""Run one of os-xenapi's dom0 plugins on Python 3, as XAPI runs it.

Not imported by the server: ``osxenapi`` starts it as a script, one child
process per call (``python -I osxenapi_shim.py <plugin file>``), because
the plugins change their process for good (root logger at DEBUG,
``socket.setdefaulttimeout(90)``, top-level modules named ``glance`` and
``utils``). XAPI passes the XML-RPC ``methodCall`` (session id, args map)
as ``argv[1]``; here it arrives on stdin, since the args carry a token
that ``ps`` would show. The answer leaves on stdout as dom0's
``XenAPIPlugin`` writes it: a ``methodResponse`` holding ``Success`` and
the value, or ``Failure`` and ``['XENAPI_PLUGIN_FAILURE', fn, class name,
str(exc)]``.

The plugins are Python 2 code, where ``str`` is bytes. What they need from
Python 2, and nothing of theirs, is stood in for before they load:

* the modules dom0 or Python 2 provided: ``XenAPIPlugin`` (its
  ``dispatch`` and ``Failure``), ``md5``, and ``cPickle``, whose
  ``dumps`` gives protocol 0 as a str (XML-RPC carries text);
* what a plugin reads from a pipe or a socket arrives as a str, one
  character per byte (latin-1, no newline translation), and a str it
  writes to a socket or a pipe leaves as those bytes again;
* ``HTTPMessage.getheader``, the Python 2 name of ``get``;
* its syslog handler writes to stderr, which the runner keeps as XAPI
  keeps a plugin's log.

Standard library only: the plugins bring their own imports (``six``).
"""

import hashlib
import http.client
import io
import logging
import logging.handlers
import os
import pickle
import runpy
import sys
import types
import xmlrpc.client

# One character per byte: Python 2's str.
PY2_STR = 'latin-1'


# -- the modules dom0 and Python 2 provide ------------------------------------

class PluginFailure(Exception):
    """``XenAPIPlugin.Failure``: a plugin's own XenAPI error code."""

    def __init__(self, code, params):
        Exception.__init__(self)
        self.params = [code] + list(params)

    def __str__(self):
        return str(self.params)


def _answer(struct):
    sys.stdout.write(xmlrpc.client.dumps((struct,), methodresponse=True,
                                         allow_none=False))
    sys.stdout.flush()


def dispatch(fn_table):
    """``XenAPIPlugin.dispatch``: run the call read from stdin."""
    import XenAPI
    params, method = xmlrpc.client.loads(sys.stdin.read())
    session_id, args = params[0], params[1]
    if method not in fn_table:
        _answer({'Status': 'Failure', 'ErrorDescription':
                 ['UNKNOWN_XENAPI_PLUGIN_FUNCTION', method]})
        return
    session = XenAPI.xapi_local()   # not connected until used, as on dom0
    # The XenAPI client has no public way to adopt a session it did not
    # log in; XAPI's own XenAPIPlugin.dispatch sets this attribute too.
    session._session = session_id
    try:
        result = fn_table[method](session, args)
    except SystemExit:
        raise
    except PluginFailure as exc:
        _answer({'Status': 'Failure', 'ErrorDescription': exc.params})
    except Exception as exc:
        _answer({'Status': 'Failure', 'ErrorDescription': [
            'XENAPI_PLUGIN_FAILURE', method, exc.__class__.__name__,
            str(exc)]})
    else:
        _answer({'Status': 'Success', 'Value': result})


class _Md5:
    """Python 2's ``md5.new()``: a str is its bytes."""

    def __init__(self, data=b''):
        self._hash = hashlib.md5(usedforsecurity=False)
        self.update(data)

    def update(self, data):
        if isinstance(data, str):
            data = data.encode(PY2_STR)
        self._hash.update(data)

    def digest(self):
        return self._hash.digest()

    def hexdigest(self):
        return self._hash.hexdigest()


def _pickle_dumps(obj, protocol=0):
    return pickle.dumps(obj, protocol).decode(PY2_STR)


def _pickle_loads(text):
    if isinstance(text, str):
        text = text.encode(PY2_STR)
    return pickle.loads(text)


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


# -- Python 2's str at the process's edges -----------------------------------

def _text_pipe(pipe):
    return io.TextIOWrapper(pipe, encoding=PY2_STR, newline='',
                            write_through=True)


def py2_pipes(make_subprocess):
    """Wrap a Popen factory: its pipes read and write Python 2 strs."""
    def wrapper(*args, **kwargs):
        proc = make_subprocess(*args, **kwargs)
        for name in ('stdin', 'stdout', 'stderr'):
            pipe = getattr(proc, name)
            if pipe is not None and not isinstance(pipe, io.TextIOBase):
                setattr(proc, name, _text_pipe(pipe))
        # communicate() decodes what it collects only in text mode.
        proc.text_mode = True
        return proc
    return wrapper


def _install_py2_http():
    read = http.client.HTTPResponse.read
    send = http.client.HTTPConnection.send

    def read_str(self, amt=None):
        return read(self, amt).decode(PY2_STR)

    def send_str(self, data):
        if isinstance(data, str):
            data = data.encode(PY2_STR)
        return send(self, data)

    http.client.HTTPResponse.read = read_str
    http.client.HTTPConnection.send = send_str
    http.client.HTTPMessage.getheader = \
        lambda self, name, default=None: self.get(name, default)


class _StderrSyslog(logging.StreamHandler):
    """dom0's syslog is the child's stderr: never this machine's."""

    def __init__(self, *args, **kwargs):
        logging.StreamHandler.__init__(self, sys.stderr)


def install(plugin_dir):
    """Make plugin_dir's modules importable the way dom0 has them."""
    sys.path.insert(0, plugin_dir)
    _module('XenAPIPlugin', dispatch=dispatch, Failure=PluginFailure)
    _module('md5', new=_Md5, md5=_Md5)
    _module('cPickle', dumps=_pickle_dumps, loads=_pickle_loads,
            HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL)
    _install_py2_http()
    logging.handlers.SysLogHandler = _StderrSyslog
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG,
                        format='%(levelname)s %(name)s: %(message)s')
    if os.path.isfile(os.path.join(plugin_dir, 'utils.py')):
        # Every command os-xenapi's plugins run goes through this one.
        import utils
        utils.make_subprocess = py2_pipes(utils.make_subprocess)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write('usage: %s PLUGIN_FILE < methodCall\n' % argv[0])
        return 2
    plugin = os.path.abspath(argv[1])
    install(os.path.dirname(plugin))
    runpy.run_path(plugin, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
