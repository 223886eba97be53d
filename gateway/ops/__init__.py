"""What operators use: the admin API, the console and its static files, the live event
stream and the timeline, traffic figures, the public status page and the OpenAPI document.

May import every wing below; nothing imports it but the composition root.
"""
