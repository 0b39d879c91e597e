"""sign2text web app: upload, link, webcam and live signing against the model's KServe v2 REST
endpoint, with feedback stored in object storage. Shipped alone in its image (app/Dockerfile);
never imports `model`, `sign2text` or torch: it talks to the model only over HTTP."""
