"""The options: where they live, and the sample config kept in step."""

import os
import subprocess
import sys

from cinder.volume import configuration

from xenapinfs_driver import opts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, 'etc', 'xenapinfs-driver.conf.sample')
GENERATOR = os.path.join(ROOT, 'etc', 'xenapinfs-config-generator.conf')


def test_historical_names_kept():
    names = {o.name for o in opts.xenapi_opts}
    assert {'xenapi_connection_url', 'xenapi_connection_username',
            'xenapi_connection_password', 'xenapi_nfs_server',
            'xenapi_nfs_serverpath', 'xenapi_sr_base_path'} <= names


def test_password_is_secret_and_help_is_sentences():
    for opt in opts.xenapi_opts:
        assert opt.help and opt.help.rstrip().endswith('.'), opt.name
        assert opt.name.startswith('xenapi_'), opt.name
    secret = {o.name for o in opts.xenapi_opts if o.secret}
    assert secret == {'xenapi_connection_password'}


def test_registered_in_the_shared_backend_group():
    conf = opts.CONF
    group = getattr(conf, configuration.SHARED_CONF_GROUP)
    assert group.xenapi_image_transfer == 'auto'
    assert group.xenapi_ssl_verify is True
    assert opts.list_opts() == [('backend_defaults', opts.xenapi_opts)]


def test_sample_config_is_current(tmp_path):
    """Fails when an option changed and etc/ was not regenerated:
    run ``oslo-config-generator --config-file
    etc/xenapinfs-config-generator.conf``."""
    out = tmp_path / 'sample.conf'
    subprocess.run([sys.executable, '-c',
                    'from oslo_config import generator; generator.main()',
                    '--config-file', GENERATOR, '--output-file', str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    with open(SAMPLE) as f:
        assert out.read_text() == f.read()
