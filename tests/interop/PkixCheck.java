// Java's PKIX validation with fleetpki's CRLs, as an operator's Java service would do it.
//
//   verify  TRUSTSTORE STOREPASS CRLFILE CHAIN           -> VALID | INVALID <reason> <msg>
//   connect TRUSTSTORE STOREPASS CRLFILE P12 HOST PORT   -> STATUS <http status line>
//
// TRUSTSTORE: a PKCS#12 keystore made by keytool -importcert from 'fleetpki ca chain --root'.
// CRLFILE: read with CertificateFactory.generateCRLs (every CRL of a concatenated file).
// P12: the client's PKCS#12 from 'fleetpki issue device --format pkcs12'; its passphrase
// comes from the environment (FLEETPKI_P12_PASSPHRASE), never the command line.
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.CRL;
import java.security.cert.CertPath;
import java.security.cert.CertPathValidator;
import java.security.cert.CertPathValidatorException;
import java.security.cert.CertStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.CollectionCertStoreParameters;
import java.security.cert.PKIXBuilderParameters;
import java.security.cert.X509CertSelector;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import javax.net.ssl.CertPathTrustManagerParameters;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class PkixCheck {
    static PKIXBuilderParameters parameters(KeyStore trust, Collection<? extends CRL> crls)
            throws Exception {
        PKIXBuilderParameters p = new PKIXBuilderParameters(trust, new X509CertSelector());
        p.addCertStore(CertStore.getInstance("Collection", new CollectionCertStoreParameters(crls)));
        p.setRevocationEnabled(true);
        return p;
    }

    public static void main(String[] args) throws Exception {
        KeyStore trust = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[1])) {
            trust.load(in, args[2].toCharArray());
        }
        CertificateFactory factory = CertificateFactory.getInstance("X.509");
        Collection<? extends CRL> crls;
        try (InputStream in = new FileInputStream(args[3])) {
            crls = factory.generateCRLs(in);
        }
        System.out.println("crls " + crls.size());
        if (args[0].equals("verify")) {
            List<Certificate> chain;
            try (InputStream in = new FileInputStream(args[4])) {
                chain = new ArrayList<>(factory.generateCertificates(in));
            }
            CertPath path = factory.generateCertPath(chain);
            try {
                CertPathValidator.getInstance("PKIX").validate(path, parameters(trust, crls));
                System.out.println("VALID");
            } catch (CertPathValidatorException e) {
                System.out.println("INVALID " + e.getReason() + " " + e.getMessage());
            }
            return;
        }
        char[] secret = System.getenv("FLEETPKI_P12_PASSPHRASE").toCharArray();
        KeyStore client = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[4])) {
            client.load(in, secret);
        }
        KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        keys.init(client, secret);
        TrustManagerFactory trusted = TrustManagerFactory.getInstance("PKIX");
        trusted.init(new CertPathTrustManagerParameters(parameters(trust, crls)));
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(keys.getKeyManagers(), trusted.getTrustManagers(), null);
        try (SSLSocket socket = (SSLSocket) context.getSocketFactory()
                .createSocket(args[5], Integer.parseInt(args[6]))) {
            socket.setSoTimeout(10000);
            socket.startHandshake();
            OutputStream out = socket.getOutputStream();
            out.write("GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
            out.flush();
            byte[] answer = socket.getInputStream().readAllBytes();
            String text = new String(answer, StandardCharsets.UTF_8);
            System.out.println("STATUS " + text.split("\r\n")[0]);
            System.out.println("BODY " + text.substring(text.indexOf("\r\n\r\n") + 4).trim());
        }
    }
}
