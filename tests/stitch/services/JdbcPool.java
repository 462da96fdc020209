// A thread-pool HTTP service (com.sun.net.httpserver on a fixed pool of 4 threads) that
// writes and reads each request's nonce in a database over JDBC, the nonce always a
// bound parameter of a PreparedStatement, never in the SQL text.  No tracing code.
//
// Connections come from a pool of 4 opened at start-up; each one's client port is
// learnt then (args[2] is the SQL that returns it) and sent in every answer, so a test
// knows which connection served which request.  A connection goes back to the pool
// only after the response is written: its statements lie inside one request's span.
//
//   java -cp <driver.jar> JdbcPool.java PORT JDBC_URL PORT_SQL
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.Executors;

public class JdbcPool {
    record Held(Connection conn, String port) {}

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String url = args[1];
        String portSql = args[2];
        int threads = 4;
        BlockingQueue<Held> pool = new ArrayBlockingQueue<>(threads);
        for (int i = 0; i < threads; i++) {
            Connection c = DriverManager.getConnection(url);
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(portSql)) {
                rs.next();
                String where = rs.getString(1);  // "port" or "host:port"
                System.err.println("connection " + where);
                pool.add(new Held(c, where.substring(where.lastIndexOf(':') + 1)));
            }
        }
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        s.createContext("/", ex -> {
            String nonce = ex.getRequestURI().getPath().substring(1);
            Held held;
            try {
                held = pool.take();
            } catch (InterruptedException e) {
                throw new java.io.IOException(e);
            }
            try {
                Connection c = held.conn();
                long n;
                try (PreparedStatement ins = c.prepareStatement(
                        "INSERT INTO orders (note, qty) VALUES (?, ?)")) {
                    ins.setString(1, nonce);
                    ins.setInt(2, 1);
                    ins.executeUpdate();
                }
                try (PreparedStatement q = c.prepareStatement(
                        "SELECT count(*) FROM orders WHERE note = ?")) {
                    q.setString(1, nonce);
                    try (ResultSet rs = q.executeQuery()) {
                        rs.next();
                        n = rs.getLong(1);
                    }
                }
                byte[] body = ("ok " + nonce + " " + held.port() + " " + n).getBytes();
                ex.sendResponseHeaders(200, body.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(body);
                }
            } catch (java.sql.SQLException e) {
                byte[] body = ("error " + e).getBytes();
                ex.sendResponseHeaders(500, body.length);
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(body);
                }
            } finally {
                pool.add(held);
            }
        });
        s.setExecutor(Executors.newFixedThreadPool(threads));
        s.start();
        System.out.println("ready");
    }
}
