// A thread-pool HTTP service: each request runs on one of 4 pool threads, which calls
// the backend with the request's nonce.  No tracing code, no header propagation.
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.util.concurrent.Executors;

public class Pool {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String backend = args[1];
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        s.createContext("/", ex -> {
            String nonce = ex.getRequestURI().getPath().substring(1);
            HttpURLConnection c = (HttpURLConnection) new URL(backend + "/down/" + nonce).openConnection();
            try (InputStream in = c.getInputStream()) { in.readAllBytes(); }
            byte[] body = ("ok " + nonce).getBytes();
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream o = ex.getResponseBody()) { o.write(body); }
        });
        s.setExecutor(Executors.newFixedThreadPool(4));
        s.start();
        System.out.println("ready");
    }
}
