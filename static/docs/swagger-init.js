// Swagger UI for the gateway's own document. Kept out of the HTML so that the
// page runs under a Content-Security-Policy that forbids inline scripts.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No badge fetched from validator.swagger.io: the page must work offline.
    validatorUrl: null,
  });
});
