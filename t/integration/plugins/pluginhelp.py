"""pluginhelp -- where the build links the plugins, and dropping one into
a test server's plugins_dir."""

import os

import tnhelp


def plugins_built():
    """build/lib/ternd/plugins: the plugins the build made."""
    return tnhelp.BUILD / "lib" / "ternd" / "plugins"


def drop(t, name):
    """Link NAME.so into t's plugins_dir (picked up at start or SIGHUP)."""
    dst = t.tmp / "plugins" / ("%s.so" % name)
    if not dst.exists():
        os.symlink(os.path.realpath(plugins_built() / ("%s.so" % name)), dst)
    return dst
