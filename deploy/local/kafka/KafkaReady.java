/*
 * Readiness probe for the local broker: asks it for cluster metadata with Kafka's own
 * Admin client (a DescribeCluster and a Metadata request) until both answer or the
 * deadline passes. Compiled once by deploy/local/kafka.sh against .local/kafka/libs.
 *
 * Usage: java KafkaReady <bootstrap> <timeout-seconds> [client.properties]
 * (the optional file adds client settings: security.protocol, SASL, truststore)
 * Exit 0 and one line "cluster_id=... brokers=N topics=N" when ready; exit 1 otherwise.
 */
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.common.Node;

public final class KafkaReady {
    public static void main(String[] args) throws InterruptedException, IOException {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Properties props = new Properties();
        if (args.length > 2) {
            try (InputStream in = new FileInputStream(args[2])) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "local-kafka-ready");
        String lastError = "no answer";
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    DescribeClusterResult cluster = admin.describeCluster();
                    Collection<Node> nodes = cluster.nodes().get(2, TimeUnit.SECONDS);
                    String clusterId = cluster.clusterId().get(2, TimeUnit.SECONDS);
                    int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                            .names().get(2, TimeUnit.SECONDS).size();
                    if (!nodes.isEmpty()) {
                        System.out.printf("cluster_id=%s brokers=%d topics=%d%n",
                                clusterId, nodes.size(), topics);
                        return;
                    }
                    lastError = "metadata lists no broker yet";
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    lastError = cause.getClass().getSimpleName() + ": " + cause.getMessage();
                }
                Thread.sleep(100);
            }
        }
        System.err.println("not ready: " + lastError);
        System.exit(1);
    }
}
