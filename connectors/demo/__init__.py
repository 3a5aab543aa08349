"""The bundled demo pipeline: ``kind = "demo"`` (``DemoConnector``) and the script that regenerates it."""

from sales_velocity.connectors.demo.connector import DemoConnector, DemoSettings

__all__ = ["DemoConnector", "DemoSettings"]
