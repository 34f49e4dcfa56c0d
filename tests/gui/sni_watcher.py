"""A StatusNotifierWatcher (what a desktop panel runs) on the session bus, for the tray test.

libayatana-appindicator exports a tray icon as a StatusNotifierItem only when a watcher owns
org.kde.StatusNotifierWatcher and says a host is registered; this one accepts every item and
prints each registration as one JSON line ({"service": bus name, "path": object path}) on
stdout, which tests/gui/e2e.py reads.
"""

import asyncio
import json
import sys

from dbus_next import BusType, Variant  # noqa: F401  (Variant: the library's types)
from dbus_next.aio import MessageBus
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal


class Watcher(ServiceInterface):
    def __init__(self, bus):
        super().__init__("org.kde.StatusNotifierWatcher")
        self.bus = bus
        self.items = []

    @method()
    def RegisterStatusNotifierItem(self, service: "s"):  # noqa: F821
        # The caller names a bus name or only an object path (then its own unique name counts).
        sender = ServiceInterface.last_msg.sender if hasattr(ServiceInterface, "last_msg") else None
        if service.startswith("/"):
            entry = {"service": sender, "path": service}
        else:
            entry = {"service": service, "path": "/StatusNotifierItem"}
        self.items.append(entry)
        print(json.dumps(entry), flush=True)
        self.StatusNotifierItemRegistered(f"{entry['service']}{entry['path']}")

    @method()
    def RegisterStatusNotifierHost(self, service: "s"):  # noqa: F821
        pass

    @dbus_property(access=PropertyAccess.READ)
    def RegisteredStatusNotifierItems(self) -> "as":  # noqa: F821
        return [f"{i['service']}{i['path']}" for i in self.items]

    @dbus_property(access=PropertyAccess.READ)
    def IsStatusNotifierHostRegistered(self) -> "b":  # noqa: F821
        return True

    @dbus_property(access=PropertyAccess.READ)
    def ProtocolVersion(self) -> "i":  # noqa: F821
        return 0

    @signal()
    def StatusNotifierItemRegistered(self, item) -> "s":  # noqa: F821
        return item

    @signal()
    def StatusNotifierHostRegistered(self):
        pass


async def main():
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    watcher = Watcher(bus)

    # dbus-next does not hand a method its message: note each call's sender as it arrives.
    def note(msg):
        if msg.member == "RegisterStatusNotifierItem":
            ServiceInterface.last_msg = msg
        return None

    bus.add_message_handler(note)
    bus.export("/StatusNotifierWatcher", watcher)
    await bus.request_name("org.kde.StatusNotifierWatcher")
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
