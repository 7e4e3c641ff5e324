"""
High availability: two lbproxy nodes, one active and one passive, sharing
virtual addresses, with the failover driven by the proxy's own state.

  - L{lbproxy.ha.advert}: the heartbeat's wire format (HMAC-SHA256 signed);
  - L{lbproxy.ha.machine}: the VRRPv3-style state machine, pure, on an
    injected clock;
  - L{lbproxy.ha.transport}: the UDP socket adverts travel on;
  - L{lbproxy.ha.channel}: the authenticated TCP connection between nodes,
    whose loss tells at once that the peer's process is gone;
  - L{lbproxy.ha.addresses}: the virtual addresses (netlink) and their
    announcements (gratuitous ARP, unsolicited neighbour advertisements);
  - L{lbproxy.ha.notify}: the operator's notify commands;
  - L{lbproxy.ha.tracking}: the balancer's health as the heartbeat sees it;
  - L{lbproxy.ha.service}: the twistd service wiring them together.

The configuration (C{[ha]}) is L{lbproxy.config.ha}.
"""
