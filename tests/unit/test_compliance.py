"""The driver implements cinder's driver interfaces, checked for real.

cinder's own compliance test passes for any class on Python 3 (its
``__subclasshook__`` collects no methods), so this one compares every
public function of the interfaces with the driver's, signature included.
"""

import inspect

import pytest

from cinder.interface import util
from cinder.interface import volume_driver
from cinder.interface import volume_manageable_driver
from cinder.interface import volume_snapshot_revert

from xenapinfs_driver import driver
from xenapinfs_driver import opts

INTERFACES = [volume_driver.VolumeDriverCore,
              volume_manageable_driver.VolumeListManageableDriver,
              volume_snapshot_revert.VolumeSnapshotRevertDriver]


def _methods(cls):
    return {name: fn for name, fn in inspect.getmembers(cls,
                                                        inspect.isfunction)
            if not name.startswith('_')}


def _cases():
    for iface in INTERFACES:
        for name in sorted(_methods(iface)):
            yield pytest.param(iface, name, id='%s.%s' % (iface.__name__,
                                                          name))


@pytest.mark.parametrize('iface,name', list(_cases()))
def test_implements(iface, name):
    mine = getattr(driver.XenAPINFSDriver, name, None)
    assert mine is not None, name
    if isinstance(mine, property):
        return  # initialized, supported: attributes on the base driver
    assert callable(mine), name
    if name not in vars(driver.XenAPINFSDriver):
        return  # cinder's own base implementation, cinder's own signature
    want = inspect.signature(_methods(iface)[name])
    have = inspect.signature(mine)
    have_params = list(have.parameters.values())
    for i, param in enumerate(want.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        # The caller may pass every interface argument by position or by
        # name: ours must accept it at the same place and under the same
        # name, or through **kwargs for trailing keyword-only extras.
        assert i < len(have_params), (name, param.name)
        got = have_params[i]
        if got.kind is got.VAR_KEYWORD:
            continue
        assert got.name == param.name, (name, got.name, param.name)
        if param.default is not param.empty:
            assert got.default is not got.empty, (name, got.name)


def test_core_methods_are_ours():
    # Inheriting VolumeDriver's NotImplementedError stubs would pass the
    # check above: the operations a minimal driver must have are defined
    # in our class itself.
    own = vars(driver.XenAPINFSDriver)
    for name in ('create_volume', 'delete_volume', 'create_snapshot',
                 'delete_snapshot', 'create_volume_from_snapshot',
                 'create_cloned_volume', 'extend_volume',
                 'copy_image_to_volume', 'copy_volume_to_image',
                 'clone_image', 'initialize_connection',
                 'terminate_connection', 'get_volume_stats',
                 'revert_to_snapshot', 'manage_existing', 'unmanage',
                 'manage_existing_get_size', 'get_manageable_volumes',
                 'get_manageable_snapshots', 'do_setup',
                 'check_for_setup_error'):
        assert name in own, name


def test_driver_info():
    info = util.DriverInfo(driver.XenAPINFSDriver)
    assert info.version == driver.XenAPINFSDriver.VERSION
    assert info.ci_wiki_name
    names = {o.name for o in driver.XenAPINFSDriver.get_driver_options()}
    assert {o.name for o in opts.xenapi_opts} <= names
    assert 'reserved_percentage' in names


def test_registered_with_cinder_interface():
    from cinder import interface
    assert driver.XenAPINFSDriver in interface._volume_register
