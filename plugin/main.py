"""The plugin object QGIS creates through classFactory."""
from __future__ import annotations

import os

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .deps import PLUGIN_DIR

MENU = "&SocioSeg"


class SocioSegPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.panel = None
        self.actions: list[QAction] = []

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        from .processing_provider import SocioSegProvider

        if self.provider is not None:
            return
        self.provider = SocioSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        icon = QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.png"))
        find = QAction(icon, "Find entities…", self.iface.mainWindow())
        find.setCheckable(True)
        find.triggered.connect(self.toggle_panel)
        settings = QAction("Settings…", self.iface.mainWindow())
        settings.triggered.connect(self.show_settings)
        for a in (find, settings):
            self.iface.addPluginToMenu(MENU, a)
            self.actions.append(a)
        self.iface.addToolBarIcon(find)

    def toggle_panel(self, checked: bool = True):
        from .panel import FindPanel

        if self.panel is None:
            self.panel = FindPanel(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.panel)
        self.panel.setVisible(bool(checked))

    def show_settings(self):
        from .settings_dialog import SettingsDialog

        if SettingsDialog(self.iface.mainWindow()).exec_() and self.panel is not None:
            self.panel.refresh_engines()

    def unload(self):
        for a in self.actions:
            self.iface.removePluginMenu(MENU, a)
            self.iface.removeToolBarIcon(a)
        self.actions = []
        if self.panel is not None:
            if self.panel.task is not None:
                self.panel.task.cancel()
            self.panel.disconnect_project()
            self.iface.removeDockWidget(self.panel)
            self.panel.deleteLater()
            self.panel = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
