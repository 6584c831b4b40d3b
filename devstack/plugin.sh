#!/bin/bash
# plugin.sh - devstack plugin for xenapinfs-driver
#
# "stack install" installs the driver. Backends are configured by lib/cinder
# itself: configure_cinder calls configure_cinder_backend_<type> <name> for
# each type:name in CINDER_ENABLED_BACKENDS. stack.sh runs configure_cinder
# before the "stack install" phase, so the function is defined every time
# this file is sourced, outside the dispatch below.

_XTRACE_XENAPINFS=$(set +o | grep xtrace)
set +o xtrace

function install_xenapinfs_driver {
    setup_develop "$XENAPINFS_DRIVER_DIR"
}

# configure_cinder_backend_xenapinfs NAME - write the [NAME] section
function configure_cinder_backend_xenapinfs {
    local be_name=$1
    local opt var missing=""
    # Untraced: stack.sh traces every command, and the password would be in
    # its log (iniset hides only its own body, not the line calling it).
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace

    for var in CINDER_XENAPI_CONNECTION_URL CINDER_XENAPI_CONNECTION_PASSWORD \
               CINDER_XENAPI_NFS_SERVER CINDER_XENAPI_NFS_SERVERPATH; do
        [[ -n "${!var}" ]] || missing+=" $var"
    done
    if [[ -n "$missing" ]]; then
        die $LINENO "xenapinfs backend $be_name needs:$missing"
    fi

    iniset "$CINDER_CONF" "$be_name" volume_backend_name "$be_name"
    iniset "$CINDER_CONF" "$be_name" volume_driver xenapinfs_driver.driver.XenAPINFSDriver
    for opt in connection_url connection_username connection_password \
               nfs_server nfs_serverpath \
               sr_uuid image_transfer ssl_verify ssl_ca_bundle; do
        var=CINDER_XENAPI_${opt^^}
        if [[ -n "${!var}" ]]; then
            iniset "$CINDER_CONF" "$be_name" "xenapi_$opt" "${!var}"
        fi
    done
    $xtrace
}

if is_service_enabled cinder; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing xenapinfs-driver"
        install_xenapinfs_driver
    fi
    # Nothing to undo on unstack or clean: the SR and its VDIs are on the
    # XenServer host and are cinder's data, not devstack's.
fi

$_XTRACE_XENAPINFS
