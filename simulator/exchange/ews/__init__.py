"""The fake Exchange Online's EWS endpoint (SOAP over HTTPS at ``/EWS/Exchange.asmx``).

One module per operation group, on the same :class:`~simulator.exchange.store.ExchangeStore`
as direct mode; ``service.EwsService`` is the entry point.
"""

from simulator.exchange.ews.service import EWS_PATH, OPERATIONS, EwsService

__all__ = ["EWS_PATH", "OPERATIONS", "EwsService"]
