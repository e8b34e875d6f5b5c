"""The requests a TWS API client can send: each message id's name and where its reqId sits.

The server needs both to refuse a request it does not serve the way TWS refuses
one: with an error on that request's own id. A client ends a request only on an
error carrying its id (ib_insync's ``Wrapper.error`` ends the request whose
reqId it is; one on -1 leaves the caller waiting forever). For order messages
the id is the orderId.

Field positions are read off ``Client`` in ib_insync 0.9.86 and ib_async 2.x,
which send the same layouts; field 0 is the message id.
"""

# message id: (request name, index of the reqId / orderId field, or None when it has none)
REQUESTS: dict[int, tuple[str, int | None]] = {
    1: ("reqMktData", 2), 2: ("cancelMktData", 2), 3: ("placeOrder", 1), 4: ("cancelOrder", 2),
    5: ("reqOpenOrders", None), 6: ("reqAccountUpdates", None), 7: ("reqExecutions", 2),
    8: ("reqIds", None), 9: ("reqContractDetails", 2), 10: ("reqMktDepth", 2),
    11: ("cancelMktDepth", 2), 12: ("reqNewsBulletins", None), 13: ("cancelNewsBulletins", None),
    14: ("setServerLogLevel", None), 15: ("reqAutoOpenOrders", None), 16: ("reqAllOpenOrders", None),
    17: ("reqManagedAccts", None), 18: ("requestFA", None), 19: ("replaceFA", 4),
    20: ("reqHistoricalData", 1), 21: ("exerciseOptions", 2), 22: ("reqScannerSubscription", 1),
    23: ("cancelScannerSubscription", 2), 24: ("reqScannerParameters", None),
    25: ("cancelHistoricalData", 2), 49: ("reqCurrentTime", None), 50: ("reqRealTimeBars", 2),
    51: ("cancelRealTimeBars", 2), 52: ("reqFundamentalData", 2), 53: ("cancelFundamentalData", 2),
    54: ("calculateImpliedVolatility", 2), 55: ("calculateOptionPrice", 2),
    56: ("cancelCalculateImpliedVolatility", 2), 57: ("cancelCalculateOptionPrice", 2),
    58: ("reqGlobalCancel", None), 59: ("reqMarketDataType", None), 61: ("reqPositions", None),
    62: ("reqAccountSummary", 2), 63: ("cancelAccountSummary", 2), 64: ("cancelPositions", None),
    65: ("verifyRequest", None), 66: ("verifyMessage", None), 67: ("queryDisplayGroups", 2),
    68: ("subscribeToGroupEvents", 2), 69: ("updateDisplayGroup", 2),
    70: ("unsubscribeFromGroupEvents", 2), 71: ("startApi", None), 72: ("verifyAndAuthRequest", None),
    73: ("verifyAndAuthMessage", None), 74: ("reqPositionsMulti", 2), 75: ("cancelPositionsMulti", 2),
    76: ("reqAccountUpdatesMulti", 2), 77: ("cancelAccountUpdatesMulti", 2),
    78: ("reqSecDefOptParams", 1), 79: ("reqSoftDollarTiers", 1), 80: ("reqFamilyCodes", None),
    81: ("reqMatchingSymbols", 1), 82: ("reqMktDepthExchanges", None), 83: ("reqSmartComponents", 1),
    84: ("reqNewsArticle", 1), 85: ("reqNewsProviders", None), 86: ("reqHistoricalNews", 1),
    87: ("reqHeadTimeStamp", 1), 88: ("reqHistogramData", 1), 89: ("cancelHistogramData", 1),
    90: ("cancelHeadTimeStamp", 1), 91: ("reqMarketRule", None), 92: ("reqPnL", 1), 93: ("cancelPnL", 1),
    94: ("reqPnLSingle", 1), 95: ("cancelPnLSingle", 1), 96: ("reqHistoricalTicks", 1),
    97: ("reqTickByTickData", 1), 98: ("cancelTickByTickData", 1), 99: ("reqCompletedOrders", None),
    100: ("reqWshMetaData", 1), 101: ("cancelWshMetaData", 1), 102: ("reqWshEventData", 1),
    103: ("cancelWshEventData", 1), 104: ("reqUserInfo", 1),
}


def name(msg_id: int) -> str:
    """The request's API name, e.g. "reqFundamentalData"; a message id TWS does not define says so."""
    return REQUESTS[msg_id][0] if msg_id in REQUESTS else f"message id {msg_id}"


def req_id(fields: list[str]) -> int:
    """The reqId (or orderId) the request carries, -1 when it has none or it cannot be read."""
    try:
        position = REQUESTS[int(fields[0])][1]
        return -1 if position is None else int(fields[position])
    except (KeyError, IndexError, ValueError):
        return -1


def is_cancel(msg_id: int) -> bool:
    """A message that stops something rather than asking for something."""
    return name(msg_id).startswith(("cancel", "unsubscribe"))
