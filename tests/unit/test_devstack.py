"""The devstack plugin, sourced by bash with devstack's functions stubbed.

The order is stack.sh's: override-defaults, lib/cinder, settings, then
plugin.sh at each phase, with lib/cinder's configure_cinder (which calls
``configure_cinder_backend_<type> <name>`` for each ``type:name`` of
CINDER_ENABLED_BACKENDS) run between "stack pre-install" and "stack
install". The lib/cinder here is the part of openstack/devstack's that the
plugin meets; the cinder.conf it writes is read back with configparser.
"""

import configparser
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, 'devstack')
DRIVER = 'xenapinfs_driver.driver.XenAPINFSDriver'
PASSWORD = 'pa ss=w&rd\\1'
XENAPI = {
    'CINDER_XENAPI_CONNECTION_URL': 'https://xs.example.com',
    'CINDER_XENAPI_CONNECTION_PASSWORD': PASSWORD,
    'CINDER_XENAPI_NFS_SERVER': 'nfs.example.com',
    'CINDER_XENAPI_NFS_SERVERPATH': '/export/cinder',
}
REQUIRED = {
    'volume_backend_name', 'volume_driver', 'xenapi_connection_url',
    'xenapi_connection_username', 'xenapi_connection_password',
    'xenapi_nfs_server', 'xenapi_nfs_serverpath'}

# devstack's functions, as far as the plugin uses them. iniset keeps the
# real one's xtrace guard, so that a trace shows only what the caller shows.
FUNCTIONS = r'''
function iniset {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    touch "$1"
    SECTION=$2 OPTION=$3 VALUE=$4 awk '
        BEGIN { s = ENVIRON["SECTION"]; o = ENVIRON["OPTION"]
                v = ENVIRON["VALUE"] }
        /^\[[^]]*\]$/ {
            if (cur == s && !done) { print o " = " v; done = 1 }
            cur = substr($0, 2, length($0) - 2); if (cur == s) seen = 1
            print; next }
        { key = $0; sub(/[ \t]*=.*/, "", key) }
        cur == s && key == o { if (!done) print o " = " v; done = 1; next }
        { print }
        END { if (!done) { if (!seen) print "[" s "]"; print o " = " v } }
    ' "$1" > "$1.new"
    mv "$1.new" "$1"
    $xtrace
}
function is_service_enabled {
    local s
    for s in "$@"; do
        [[ ,$ENABLED_SERVICES, == *,$s,* ]] && return 0
        [[ $s == cinder && ,$ENABLED_SERVICES == *,c-* ]] && return 0
    done
    return 1
}
function setup_develop { echo "setup_develop $*" >> "$CALLS"; }
function pip_install { echo "pip_install $*" >> "$CALLS"; }
function define_plugin { echo "define_plugin $*" >> "$CALLS"; }
function echo_summary { echo "$*"; }
function die { shift; echo "ERROR: $*" >&2; exit 1; }
function xtrace_state { echo "$1 $(set +o | grep xtrace)" >> "$XTRACE_LOG"; }
'''

LIB_CINDER = r'''
CINDER_DRIVER=${CINDER_DRIVER:-default}
if [[ -r $CINDER_PLUGINS/$CINDER_DRIVER ]]; then
    source $CINDER_PLUGINS/$CINDER_DRIVER
fi
CINDER_ENABLED_BACKENDS=${CINDER_ENABLED_BACKENDS:-lvm:lvmdriver-1}

function configure_cinder_backend_lvm {
    iniset "$CINDER_CONF" "$1" volume_backend_name "$1"
    iniset "$CINDER_CONF" "$1" volume_driver \
        cinder.volume.drivers.lvm.LVMVolumeDriver
}

function configure_cinder {
    rm -f "$CINDER_CONF"
    iniset "$CINDER_CONF" DEFAULT debug True
    if is_service_enabled c-vol && [[ -n "$CINDER_ENABLED_BACKENDS" ]]; then
        local enabled_backends="" default_name="" be be_name be_type
        for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
            be_type=${be%%:*}
            be_name=${be##*:}
            if type configure_cinder_backend_${be_type} >/dev/null 2>&1; then
                configure_cinder_backend_${be_type} ${be_name}
            fi
            [[ -n "$default_name" ]] || default_name=$be_name
            enabled_backends+=$be_name,
        done
        iniset "$CINDER_CONF" DEFAULT enabled_backends ${enabled_backends%,*}
        iniset "$CINDER_CONF" DEFAULT default_volume_type $default_name
    fi
    if [[ -r $CINDER_PLUGINS/$CINDER_DRIVER ]]; then
        configure_cinder_driver
    fi
}
'''

# What devstack before 970891a4 shipped as lib/cinder_plugins/XenAPINFS.
OLD_CINDER_PLUGIN = r'''
function configure_cinder_driver {
    iniset $CINDER_CONF DEFAULT volume_driver \
        cinder.volume.drivers.xenapi.sm.XenAPINFSDriver
    iniset $CINDER_CONF DEFAULT xenapi_connection_password \
        "$CINDER_XENAPI_CONNECTION_PASSWORD"
}
'''

STACK = '''
source "$PLUGIN/override-defaults"; xtrace_state override-defaults
source "$LIB/lib_cinder"
source "$PLUGIN/settings"; xtrace_state settings
for phase in pre-install install post-config extra test-config; do
    echo "phase $phase" >> "$CALLS"
    source "$PLUGIN/plugin.sh" stack $phase; xtrace_state "stack $phase"
    if [[ $phase == pre-install ]]; then
        configure_cinder; xtrace_state configure_cinder
    fi
done
'''

UNSTACK_CLEAN = '''
source "$PLUGIN/override-defaults"
source "$LIB/lib_cinder"
source "$PLUGIN/settings"
source "$PLUGIN/plugin.sh" unstack; xtrace_state unstack
source "$PLUGIN/plugin.sh" clean; xtrace_state clean
'''


class Run:
    def __init__(self, proc, tmp):
        self.rc = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        self.conf_path = tmp / 'cinder.conf'
        calls = tmp / 'calls'
        self.calls = calls.read_text().splitlines() if calls.exists() else []
        xlog = tmp / 'xtrace'
        self.xtrace = xlog.read_text().splitlines() if xlog.exists() else []

    @property
    def conf(self):
        # No DEFAULT fallback: each section is read as written.
        parser = configparser.ConfigParser(interpolation=None,
                                           default_section='\0')
        parser.read(self.conf_path)
        return {s: dict(parser[s]) for s in parser.sections()}


def run(tmp_path, local=None, script=STACK, xtrace=False,
        services='c-api,c-sch,c-vol'):
    lib = tmp_path / 'lib'
    (lib / 'cinder_plugins').mkdir(parents=True, exist_ok=True)
    (lib / 'cinder_plugins' / 'XenAPINFS').write_text(OLD_CINDER_PLUGIN)
    (lib / 'functions').write_text(FUNCTIONS)
    (lib / 'lib_cinder').write_text(LIB_CINDER)
    # local.conf's [[local|localrc]]: plain shell variables, not exported.
    localrc = ''.join('%s=%s\n' % (k, _quote(v))
                      for k, v in (local or {}).items())
    text = ('set -o errexit\nsource "$LIB/functions"\n' + localrc +
            ('set -o xtrace\n' if xtrace else '') + script)
    env = {'PATH': os.environ['PATH'], 'PLUGIN': PLUGIN, 'LIB': str(lib),
           'CALLS': str(tmp_path / 'calls'),
           'XTRACE_LOG': str(tmp_path / 'xtrace'),
           'CINDER_CONF': str(tmp_path / 'cinder.conf'),
           'CINDER_PLUGINS': str(lib / 'cinder_plugins'),
           'ENABLED_SERVICES': services}
    proc = subprocess.run(['bash', '-c', text], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    return Run(proc, tmp_path)


def _quote(value):
    return "'%s'" % value.replace("'", "'\\''")


def _xenapi_section(name):
    return {
        'volume_backend_name': name, 'volume_driver': DRIVER,
        'xenapi_connection_url': 'https://xs.example.com',
        'xenapi_connection_username': 'root',
        'xenapi_connection_password': PASSWORD,
        'xenapi_nfs_server': 'nfs.example.com',
        'xenapi_nfs_serverpath': '/export/cinder'}


def test_enabled_backends_configures_named_section(tmp_path):
    r = run(tmp_path, dict(XENAPI, CINDER_ENABLED_BACKENDS=(
        'lvm:lvmdriver-1,xenapinfs:xen-a')))
    assert r.rc == 0, r.stderr
    conf = r.conf
    assert conf['xen-a'] == _xenapi_section('xen-a')
    assert conf['lvmdriver-1']['volume_driver'].endswith('LVMVolumeDriver')
    assert conf['DEFAULT']['enabled_backends'] == 'lvmdriver-1,xen-a'
    assert conf['DEFAULT']['default_volume_type'] == 'lvmdriver-1'


def test_password_only_in_its_backend_section(tmp_path):
    r = run(tmp_path, dict(XENAPI, CINDER_ENABLED_BACKENDS=(
        'lvm:lvmdriver-1,xenapinfs:xen-a,xenapinfs:xen-b')))
    assert r.rc == 0, r.stderr
    holders = sorted(s for s, opts in r.conf.items()
                     if PASSWORD in opts.values())
    assert holders == ['xen-a', 'xen-b']
    assert r.conf_path.read_text().count(PASSWORD) == 2


@pytest.mark.parametrize('local, backends, default', [
    # The legacy single backend: it replaces lib/cinder's lvm default.
    ({}, 'xenapinfs-1', 'xenapinfs-1'),
    ({'XENAPINFS_BACKEND_NAME': 'xs'}, 'xs', 'xs'),
    # Beside backends the user asked for, first: it was *the* driver.
    ({'CINDER_ENABLED_BACKENDS': 'lvm:lvmdriver-1'},
     'xenapinfs-1,lvmdriver-1', 'xenapinfs-1'),
    # Already listed: left as the user wrote it.
    ({'CINDER_ENABLED_BACKENDS': 'lvm:lvmdriver-1,xenapinfs:mine'},
     'lvmdriver-1,mine', 'lvmdriver-1'),
])
def test_cinder_driver_xenapinfs_becomes_a_backend(
        tmp_path, local, backends, default):
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS', **local))
    assert r.rc == 0, r.stderr
    conf = r.conf
    assert conf['DEFAULT']['enabled_backends'] == backends
    assert conf['DEFAULT']['default_volume_type'] == default
    name = [b for b in backends.split(',') if b != 'lvmdriver-1'][0]
    assert conf[name] == _xenapi_section(name)
    # Neither this plugin nor an old devstack's lib/cinder_plugins/XenAPINFS
    # wrote the driver or its options into [DEFAULT].
    assert not [k for k in conf['DEFAULT']
                if k.startswith('xenapi_') or k == 'volume_driver']


def test_optional_variables(tmp_path):
    r = run(tmp_path, dict(
        XENAPI, CINDER_ENABLED_BACKENDS='xenapinfs:xen-a',
        CINDER_XENAPI_CONNECTION_USERNAME='cinder',
        CINDER_XENAPI_SR_UUID='0f3bd7b5-47f1-4e8e-9c02-5bf1c3a4d2e1',
        CINDER_XENAPI_IMAGE_TRANSFER='stream',
        CINDER_XENAPI_SSL_VERIFY='False',
        CINDER_XENAPI_SSL_CA_BUNDLE='/etc/cinder/xs-ca.pem'))
    assert r.rc == 0, r.stderr
    section = r.conf['xen-a']
    assert set(section) - REQUIRED == {
        'xenapi_sr_uuid', 'xenapi_image_transfer', 'xenapi_ssl_verify',
        'xenapi_ssl_ca_bundle'}
    assert section['xenapi_connection_username'] == 'cinder'
    assert section['xenapi_sr_uuid'] == '0f3bd7b5-47f1-4e8e-9c02-5bf1c3a4d2e1'
    assert section['xenapi_image_transfer'] == 'stream'
    assert section['xenapi_ssl_verify'] == 'False'
    assert section['xenapi_ssl_ca_bundle'] == '/etc/cinder/xs-ca.pem'


def test_missing_connection_details_stop_stack(tmp_path):
    r = run(tmp_path, {'CINDER_ENABLED_BACKENDS': 'xenapinfs:xen-a',
                       'CINDER_XENAPI_NFS_SERVER': 'nfs.example.com',
                       'CINDER_XENAPI_NFS_SERVERPATH': '/export'})
    assert r.rc != 0
    assert ('xenapinfs backend xen-a needs: CINDER_XENAPI_CONNECTION_URL '
            'CINDER_XENAPI_CONNECTION_PASSWORD') in r.stderr
    assert 'setup_develop %s' % ROOT not in r.calls


def test_enabled_but_unused_leaves_lvm_alone(tmp_path):
    r = run(tmp_path)
    assert r.rc == 0, r.stderr
    assert r.conf['DEFAULT']['enabled_backends'] == 'lvmdriver-1'
    assert 'xenapi' not in r.conf_path.read_text()
    assert 'setup_develop %s' % ROOT in r.calls


def test_stack_install_installs_the_checkout(tmp_path):
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS'))
    assert r.rc == 0, r.stderr
    assert r.calls == [
        'define_plugin xenapinfs-driver', 'phase pre-install',
        'phase install', 'setup_develop %s' % ROOT,
        'phase post-config', 'phase extra', 'phase test-config']


def test_nothing_installed_without_cinder(tmp_path):
    r = run(tmp_path, services='key,g-api,n-api')
    assert r.rc == 0, r.stderr
    assert not [c for c in r.calls if c.startswith(('setup_', 'pip_'))]


def test_unstack_and_clean_are_harmless(tmp_path):
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS'))
    before = r.conf_path.read_text()
    (tmp_path / 'calls').unlink()
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS'),
            script=UNSTACK_CLEAN)
    assert r.rc == 0, r.stderr
    assert r.conf_path.read_text() == before
    assert r.calls == ['define_plugin xenapinfs-driver']


@pytest.mark.parametrize('xtrace', [True, False])
def test_xtrace_restored_and_password_never_traced(tmp_path, xtrace):
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS'), xtrace=xtrace)
    assert r.rc == 0, r.stderr
    state = 'set -o xtrace' if xtrace else 'set +o xtrace'
    assert len(r.xtrace) == 8
    assert all(line.endswith(state) for line in r.xtrace), r.xtrace
    if xtrace:
        # Traced where the caller traces, up to the hook that sees the
        # password.
        assert '+ configure_cinder_backend_xenapinfs xenapinfs-1' in r.stderr
        assert 'xenapi_nfs_server' not in r.stderr
    else:
        assert not r.stderr
    assert PASSWORD not in r.stderr and PASSWORD not in r.stdout
    r = run(tmp_path, dict(XENAPI, CINDER_DRIVER='XenAPINFS'), xtrace=xtrace,
            script=UNSTACK_CLEAN)
    assert r.xtrace[-2:] == ['unstack ' + state, 'clean ' + state]


def test_readme_documents_every_variable():
    with open(os.path.join(PLUGIN, 'README.rst')) as f:
        readme = f.read()
    variables = {}
    for name in ('settings', 'override-defaults'):
        with open(os.path.join(PLUGIN, name)) as f:
            variables.update(re.findall(r'^(\w+)=\$\{\1:-(.*)\}$', f.read(),
                                        re.M))
    assert len(variables) == 11, variables
    for var, default in variables.items():
        row = re.search(r'^``%s`` \(default:? (.*)\)$' % var, readme, re.M)
        assert row, var
        if not default.startswith('$'):
            expected = '``%s``' % default if default else 'empty'
            assert row.group(1) == expected, var
    assert ('enable_plugin xenapinfs-driver '
            'https://opendev.org/x/xenapinfs-driver') in readme


@pytest.mark.skipif(not shutil.which('shellcheck'),
                    reason='shellcheck not installed')
def test_shellcheck_clean():
    proc = subprocess.run(
        ['shellcheck', '-s', 'bash', 'plugin.sh', 'settings',
         'override-defaults'], cwd=PLUGIN, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
