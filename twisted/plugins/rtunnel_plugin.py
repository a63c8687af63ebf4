from twisted.application.service import ServiceMaker

rtunnel = ServiceMaker("rtunnel", "rtunnel.tap", "SSH reverse tunnels (ssh -R)", "rtunnel")
