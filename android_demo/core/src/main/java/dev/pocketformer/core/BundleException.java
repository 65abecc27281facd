package dev.pocketformer.core;

/** A bundle that cannot be used: unreadable, of another schema or a newer version, or failing its checksums. */
public class BundleException extends Exception {
    private static final long serialVersionUID = 1L;

    /** The bundle-relative file at fault, or null when the fault is the bundle as a whole. */
    public final String file;

    public BundleException(String file, String message) {
        super(message);
        this.file = file;
    }
}
