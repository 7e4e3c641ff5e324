"""
The HTTP front's interfaces: what the message parsers deliver to, and in
which order; what a backend connection tells the client connection using it.
"""

from zope.interface import Attribute, Interface


class IHTTPMessageReceiver(Interface):
    """
    Receives the events of one HTTP message after another from a
    L{lbproxy.http.parser.RequestParser} or
    L{lbproxy.http.parser.ResponseParser}.

    For each message: C{headersComplete}, zero or more C{bodyData}, then
    C{messageComplete}. Any of these may call the parser's C{pauseParsing}
    (nothing more is delivered until C{resumeParsing}), C{resumeParsing} or
    C{detachTunnel}.
    """

    def headersComplete(head):
        """
        A head was accepted (a L{lbproxy.http.message.RequestHead} or
        L{lbproxy.http.message.ResponseHead}).
        """

    def bodyData(data):
        """
        The next piece of the (de-chunked) body, as it arrived: never
        buffered whole, never empty.
        """

    def messageComplete():
        """
        The message ended; a chunked body's trailers, if any, are in
        C{head.trailers}.
        """


class IHTTPMessageParser(Interface):
    """
    An incremental HTTP/1.1 parser fed with a connection's bytes.
    """

    paused = Attribute("Whether delivery of events is suspended.")
    idle = Attribute("Whether no message is in progress and nothing is buffered.")

    def dataReceived(data):
        """
        Parse C{data}. Raises L{lbproxy.http.errors.HTTPParseError} when the
        stream cannot be accepted; the parser then discards everything.
        """

    def connectionLost():
        """
        The peer closed the connection: completes a read-until-close body,
        or raises L{lbproxy.http.errors.HTTPParseError} when a message was
        cut short.
        """

    def pauseParsing():
        """
        Stop delivering events; data received meanwhile is buffered (the
        owner should also pause the transport).
        """

    def resumeParsing():
        """
        Deliver buffered events and go on parsing.
        """

    def detachTunnel():
        """
        Leave HTTP after a message that opens a tunnel, returning the bytes
        received after it. The parser accepts no more data afterwards.
        """


class IBackendUser(Interface):
    """
    What a L{BackendHTTPConnection} tells the client connection using it.
    """

    def responseHeadReceived(head, body):
        """
        A response head (interim or final, a L{ResponseHead}) arrived.

        C{body} is L{None} when the body, if any, is still to come (as
        L{responseBodyReceived}, then L{responseCompleted}); or the whole
        body of a final response that arrived whole in one read (see
        L{lbproxy.http.parser.ResponseParser.wholeMessage}), which it
        completes: nothing more follows for it.
        """

    def responseBodyReceived(data):
        """
        The next piece of the response body arrived.
        """

    def responseCompleted():
        """
        The response whose head came last ended (for an interim response:
        its head was all there was).
        """

    def backendFailed(connection, error, closed):
        """
        The connection broke before the response ended: C{error} is the
        L{HTTPParseError} (status 502) saying why; C{closed} is true when
        the backend closed or reset the connection, false when it sent
        something that is not a valid response.
        """

    def backendWriteBlocked():
        """
        The backend stopped reading: stop reading the request body from the
        client.
        """

    def backendWriteUnblocked():
        """
        The backend reads again.
        """
