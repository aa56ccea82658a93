package finpulse.apicurio;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.ArrayList;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

/**
 * The one bean the config-index build extension (not on Maven Central) would make: the list of the
 * registry's runtime-editable settings, empty here.
 */
@ApplicationScoped
public class FinpulseShim {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(new ArrayList<>());
    }
}
