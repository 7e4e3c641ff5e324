"""
Plugin package for lbproxy extensions (backend selectors).

Third parties ship a module in their own ``lbproxy/plugins/`` directory
(without ``lbproxy/__init__.py``) anywhere on sys.path; it is found through
``twisted.plugin.getPlugins``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
